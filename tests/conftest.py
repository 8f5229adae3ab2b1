"""Suite-wide settings.

The default force path compiles the analytical forces (``mlff_distiller.models.fast_path``);
each new model size costs a compile, so the suite runs eager (``MLFFD_COMPILE=0``) and the tests
of the compiled path opt in explicitly (``compile=True``).
"""

import os

os.environ.setdefault("MLFFD_COMPILE", "0")
