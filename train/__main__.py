"""`python -m train ...` runs midas-train; under torchrun use `torchrun --no-python midas-train ...`, which a
train.py in the working directory cannot shadow (`torchrun -m train` would run that file)."""

from train.cli import main

main()
