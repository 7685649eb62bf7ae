from diskvault.cli.app import main

main()
