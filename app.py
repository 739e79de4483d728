"""The workbench app (``streamlit run app.py``): names its pages; each page is a file in ``pages/``."""

from pathlib import Path

import streamlit as st

HERE = Path(__file__).parent
pages = [st.Page("pages/0_Home.py", title="Home", icon=":material/home:", default=True)]
pages += [st.Page(f"pages/{p.name}") for p in sorted((HERE / "pages").glob("[1-9]_*.py"))]
st.navigation(pages).run()
