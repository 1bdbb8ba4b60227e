from fraisier_textfile.cli.commands import main

main()
