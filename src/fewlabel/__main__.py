from fewlabel.cli import main

main()
