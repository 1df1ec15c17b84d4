"""Small helpers every part of gcnet_d2 may import (they import nothing else from it)."""
