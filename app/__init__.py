"""The application: what composes the stages into the ``sobriety`` command — the command line
(``cli.py`` and the ``*_commands.py`` it dispatches to), ``sobriety run`` and the services
(``services.py``), ``sobriety demo`` (``demo.py``), the leak-detection evaluation
(``evaluate.py``, which needs the simulators), and the broker and database the demo finds or
starts itself (``embedded/``). The only layer that imports the stages."""
