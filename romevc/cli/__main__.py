from romevc.cli import main

main()
