"""The workbench app (``streamlit run app.py``): names its pages; each page is a file in ``pages/``."""

import re
from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent


def _number(p: Path) -> int:
    return int(re.match(r"\d+", p.name).group())


pages = [st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True)]
pages += [st.Page(f"pages/{p.name}") for p in sorted(HERE.glob("pages/[1-9]*_*.py"), key=_number)]
st.navigation(pages).run()
