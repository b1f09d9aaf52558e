from craft.cli import main

main()
