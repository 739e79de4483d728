"""Neighbours: the k nearest images of one image, under one model or two side by side."""

import streamlit as st

from lib import gallery, ui
from lib.catalog import ModelChoice
from lib.errors import WorkbenchError
from lib.neighbors import neighbours, neighbours_of_image

ctx = ui.setup("Neighbours", ":material/hub:")
st.title("Neighbours")


def recentre(cid: str) -> None:
    ui.set_page_param("id", cid)
    st.session_state["nb-upload-gen"] = st.session_state.get("nb-upload-gen", 0) + 1  # drop any upload


with ui.guard():
    ds = ctx.require_dataset()
    space = ctx.require_space()
    images = ds.images

    q1, q2, q3 = st.columns([2, 2, 1])
    with q1, st.form("nb-find", border=False):
        prefix = st.text_input("Image id (or a unique prefix)", placeholder="e.g. 3f58f690")
        if st.form_submit_button("Find") and prefix.strip():
            try:
                recentre(ds.resolve_id(prefix))
            except WorkbenchError as e:
                st.error(str(e))
    upload = q2.file_uploader("…or upload an image (kept in memory, never stored)", key=f"nb-upload-"
                              f"{st.session_state.get('nb-upload-gen', 0)}",
                              type=["png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff", "gif", "dcm"])
    k = q3.slider("k", 3, 48, 12, key="nb-k")

    others = [c for c in ctx.models() if c != ctx.model]
    second_key = st.selectbox("Compare with a second model", ["(none)"] + [c.key for c in others], key="nb-second",
                              format_func=lambda x: x if x == "(none)" else ModelChoice.from_key(x).label)
    second = None if second_key == "(none)" else ModelChoice.from_key(second_key)

    qid = ui.page_param("id")
    img = None
    if upload is not None:
        img = gallery.decode_upload(upload.getvalue(), upload.name)
        qrow = None
    else:
        if ds.row_of(qid) is None:
            qid = str(images["id"].iat[0])
            ui.set_page_param("id", qid)
        qrow = space.row_of(qid)

    left, right = st.columns([1, 4])
    with left:
        st.markdown("**Query**")
        if img is not None:
            ui.show_upload(ctx, img, key="query", caption=upload.name)
        else:
            rec = images.iloc[qrow]
            ui.show_image(ctx, qrow, key="query",
                          caption=f"{rec['label'] if isinstance(rec['label'], str) else '(no label)'} · {ui.short(qid)}")
            st.caption(f"`{rec['path']}`")
            ui.nav_link("gallery", "Gallery", ctx, icon=":material/grid_view:")

    def results(choice: ModelChoice, sp):
        if img is not None:
            return neighbours_of_image(sp, ui.load_backend(choice), img, k)
        return neighbours(sp, qrow, k)

    def caption(rec) -> str:
        lab = rec["label"] if isinstance(rec["label"], str) else "(no label)"
        return f"#{rec['rank']} · {rec['score']:.3f} · {lab} · {gallery.file_name(rec['path'], 28)}"

    def actions(rec, key) -> None:
        st.button("Open", key=f"open-{key}", on_click=recentre, args=(rec["id"],), icon=":material/center_focus_strong:",
                  help="Recentre on this image")

    with right:
        first = results(ctx.model, space)
        if second is None:
            st.markdown(f"**{k} nearest under `{ctx.model.label}`**")
            ui.image_grid(ctx, first, key="nb-a", columns=6, caption=caption, actions=actions)
        else:
            space_b = ctx.require_space(second)
            other = results(second, space_b)
            st.metric(f"Overlap of the two top-{k} sets (Jaccard)", f"{gallery.jaccard(first['id'], other['id']):.2f}")
            ca, cb = st.columns(2)
            with ca:
                st.markdown(f"**{ctx.model.label}**")
                ui.image_grid(ctx, first, key="nb-a", columns=3, caption=caption, actions=actions)
            with cb:
                st.markdown(f"**{second.label}**")
                ui.image_grid(ctx, other, key="nb-b", columns=3, caption=caption, actions=actions)
