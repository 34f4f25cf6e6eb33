"""The sync face's machinery: modules generated from the async ones by tools/unasync.py
(each says so in its first line), and the few written by hand (``_acompat``, ``_source``,
``_pipeline``). The public face is :mod:`rowstream.sync`. See docs/one-core.md.
"""
