from telemon.cli import main

main()
