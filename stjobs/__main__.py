from stjobs.cli import main

main()
