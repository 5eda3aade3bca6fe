from swin_cli.main import main

main()
