from cnnspec.launch import main

main()
