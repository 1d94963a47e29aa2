"""The (TAG, image) pairs Detectron's golden folder holds intermediates for."""
GOLDEN_CASES = [
    ("R-50-FPN-GN_seed1", "grace_hopper.jpg"),
    ("R-50-FPN-GN_seed1", "astronaut.png"),
    ("R-50-FPN-GN_seed1", "chelsea.png"),
    ("R-50-FPN-GN_seed1", "wide_synthetic.png"),
    ("R-50-FPN-GN_seed1", "tiny_chelsea.png"),
    ("R-101-FPN-GN_seed1", "astronaut.png"),
    ("R-50-FPN-BN_seed1", "grace_hopper.jpg"),
    ("R-50-FPN-BN_seed1", "chelsea.png"),
    ("R-50-FPN-BN_seed1", "wide_synthetic.png"),
    ("R-101-FPN-BN_seed1", "astronaut.png"),
]
