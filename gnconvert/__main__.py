from gnconvert.cli import main

main()
