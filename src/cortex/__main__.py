from cortex.cli.main import main

main()
