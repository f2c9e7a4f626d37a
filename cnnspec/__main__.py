from cnnspec.cli.launch import main

main()
