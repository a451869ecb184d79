from vdgen.cli import main

main()
