from fraisier_textfile.cli.group import main

main()
