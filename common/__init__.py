"""Neutral building blocks both rooms may use: ``provider/`` and ``sandbox/`` import from here,
``common`` imports from neither (and never from ``bench/`` or ``testbed/``)."""
