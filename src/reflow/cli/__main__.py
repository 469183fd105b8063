from reflow.cli import main

main()
