from fraisier_textfile.cli import main

main()
