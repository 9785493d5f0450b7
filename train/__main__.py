from train.cli import main
from train.exits import exit_after

exit_after(main)
