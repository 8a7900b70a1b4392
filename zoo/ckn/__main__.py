"""`python -m kernelzoo.zoo.ckn train|eval|info ...` is `kernelzoo train|eval|info ...` (the CKN family is registered
in kernelzoo.zoo.registry.FAMILIES)."""
import sys

from kernelzoo.cli import main, quiet_tensorflow

quiet_tensorflow("-v" in sys.argv or "--verbose" in sys.argv)
sys.exit(main(sys.argv[1:]))
