"""`python -m train ...` and `torchrun --nproc_per_node N -m train ...` run midas-train."""

from train.cli import main

main()
