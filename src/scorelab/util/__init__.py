"""Small shared helpers with no research content: value checks (``checks``), the error
classes (``errors``), progress bars (``progress``), stop requests on signals
(``interrupt``), speed switches (``speed``) and sample grids on disk (``visualize``).

Imports: torch, the standard library and (``speed``, ``progress``) Lightning / tqdm only.
"""
