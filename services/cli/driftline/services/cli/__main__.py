from driftline.services.cli.main import main

main()
