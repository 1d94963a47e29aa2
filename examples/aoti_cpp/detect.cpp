// Run a gnconvert AOTInductor package (gnconvert export SOURCE --to aoti -o MODEL.pt2) from C++, without Python.
//
//   detect MODEL.pt2 IMAGE.bgr HEIGHT WIDTH [LIBRARY.so ...]
//
// IMAGE.bgr holds HEIGHT*WIDTH*3 bytes, the (H, W, 3) uint8 BGR image as OpenCV's imread gives
// it (e.g. `cv2.imread(p).tofile("image.bgr")`).  The package calls torchvision::roi_align, so
// torchvision's operator library must be loaded first: pass its path, libtorchvision.so from a
// C++ build of torchvision, or the wheel's torchvision/_C_stable.so preceded by libpython3.X.so
// (the wheel's library links libtorch_python).  The libraries are loaded in the order given.
// Build against the torch wheel (T = python -c "import torch, os; print(os.path.dirname(torch.__file__))"):
//   c++ -std=c++20 -O1 -D_GLIBCXX_USE_CXX11_ABI=1 detect.cpp -o detect -I $T/include \
//       -I $T/include/torch/csrc/api/include -L $T/lib -Wl,-rpath,$T/lib -ltorch -ltorch_cpu -lc10 -ldl
// and run with LD_LIBRARY_PATH=$T/lib when loading the wheel's torchvision library.
// Prints one line per detection: class, score, x1 y1 x2 y2 (Detectron's inclusive pixels), each float
// with 9 significant digits, which give back the float32 bit for bit.
#include <dlfcn.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include <torch/csrc/inductor/aoti_package/model_package_loader.h>
#include <torch/torch.h>

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: detect MODEL.pt2 IMAGE.bgr HEIGHT WIDTH [LIBRARY.so ...]\n";
    return 2;
  }
  for (int i = 5; i < argc; ++i) {
    if (!dlopen(argv[i], RTLD_NOW | RTLD_GLOBAL)) {
      std::cerr << "cannot load " << argv[i] << ": " << dlerror() << "\n";
      return 1;
    }
  }
  const int64_t height = std::stoll(argv[3]), width = std::stoll(argv[4]);
  std::ifstream file(argv[2], std::ios::binary);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (static_cast<int64_t>(bytes.size()) != height * width * 3) {
    std::cerr << argv[2] << ": " << bytes.size() << " bytes, expected HEIGHT*WIDTH*3 = " << height * width * 3 << "\n";
    return 1;
  }
  torch::NoGradGuard no_grad;
  auto image = torch::from_blob(bytes.data(), {height, width, 3}, torch::kUInt8).clone();
  torch::inductor::AOTIModelPackageLoader loader(argv[1]);
  // outputs in the program's order: boxes, scores, classes, mask_probs, masks
  std::vector<torch::Tensor> out = loader.run({image});
  auto boxes = out[0], scores = out[1], classes = out[2];
  for (int64_t i = 0; i < scores.size(0); ++i) {
    std::printf("%lld %.9g %.9g %.9g %.9g %.9g\n", static_cast<long long>(classes[i].item<int64_t>()),
                scores[i].item<float>(), boxes[i][0].item<float>(), boxes[i][1].item<float>(),
                boxes[i][2].item<float>(), boxes[i][3].item<float>());
  }
  return 0;
}
