from train.cli import exit_after, main

exit_after(main)
