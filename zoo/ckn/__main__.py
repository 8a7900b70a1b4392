"""`python -m kernelzoo.zoo.ckn train|eval|info ...` is `kernelzoo train|eval|info ...` with the CKN
family registered: a stand-in until "ckn" is in kernelzoo.zoo.registry.FAMILIES (then delete it)."""
import sys

from kernelzoo.cli import main, quiet_tensorflow

quiet_tensorflow("-v" in sys.argv or "--verbose" in sys.argv)
from kernelzoo.zoo import registry  # noqa: E402  (after TensorFlow's log level is set)

if "ckn" not in registry.FAMILIES:
    registry.FAMILIES = registry.FAMILIES + ("ckn",)
    registry._presets.cache_clear()
sys.exit(main(sys.argv[1:]))
