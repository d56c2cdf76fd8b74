from presenced.cli.main import main

main()
