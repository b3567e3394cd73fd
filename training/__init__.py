"""Training side of jointembed_pg: backbones, heads, losses, quantizer, data, runner.

Implements Contract 1 of ``docs/DESIGN.md`` (training -> export) and the method of
[Malali & Keller 2022] as formulated in ``docs/METHOD.md``. The runtime package
``jointembed_pg`` never imports this package.
"""
