"""Map: the dataset's images as points of a 2-D map of one model's embeddings, linked to the
images: click a point to see it (through the safe view) and open its detail view; a lasso
selects images for the Gallery and bulk labelling; unselected points stay visible in grey."""

import streamlit as st

from lib import charts, gallery, ui

ctx = ui.setup("Map", ":material/scatter_plot:")
st.title("Map")

with ui.guard():
    ds = ctx.require_dataset()
    ctx.require_space()
    images = ds.images
    c1, c2, c3 = st.columns([1, 2, 2])
    method = c1.radio("Projection", ["PCA", "UMAP"], horizontal=True, key="mp-method").lower()
    colour = c2.radio("Colour by", ["label", "EB", "safe view"], horizontal=True, key="mp-colour")
    if method == "umap" and not ui.projection_cached(ctx.name, ctx.model, "umap") \
            and not c3.button("Compute the UMAP map (seconds to minutes)", key="mp-umap"):
        st.caption("Showing PCA until the UMAP map is computed.")
        method = "pca"
    pts = ui.map_points(ctx, method)
    sel = ui.selection(ctx.name)
    # this run's click, or every point inside its box / lasso (drawn or not), before drawing
    chosen = charts.selected_ids(st.session_state.get("mp-map"), pts)
    if len(chosen) == 1 and chosen[0] != st.session_state.get("mp-clicked"):  # a click: open that image here
        st.session_state["mp-clicked"] = chosen[0]
        ui.set_page_param("id", chosen[0])
    current = ui.page_param("id")
    hover = st.toggle("Thumbnails on hover", key="mp-hover",
                      help="Each point shows its image beside the cursor, through the safe view "
                           f"(at most {ui.HOVER_MAX} points: all of a small dataset, else the open image, "
                           "the selection and a sample). Clicks and the lasso need it off.")
    ids = ui.hover_preview_ids(pts["id"], first=[current, *(sel["ids"] if sel else [])]) if hover else []
    fig = ui.map_figure(ctx, method, colour, selection=sel, highlight=current, always=ids)
    if hover:
        ui.hover_map(ctx, fig, ids)
        st.caption(f"Thumbnails for {len(ids)} of {gallery.plural(len(pts), 'point')}"
                   + ("." if len(ids) == len(pts) else " (the open image, the selection, then a seeded sample)."))
    else:
        st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"), key="mp-map",
                        width="stretch")
    if len(chosen) > 1:
        ui.selection_bar(ctx, chosen, "Map", f"**{gallery.plural(len(chosen), 'image')} selected** with the lasso: label them in "
                                             "bulk or review them from the Gallery.")
    elif sel:
        s1, s2 = st.columns([3, 1])
        s1.caption(f"{gallery.plural(len(sel['ids']), 'image')} selected on *{sel['source']}* (the coloured points).")
        s2.button("Clear selection", on_click=ui.clear_selection, key="mp-clear")
    row = ds.row_of(current)
    if row is not None:
        a, b = st.columns([1, 3])
        with a:
            ui.show_image(ctx, row, key="mp-one", caption=gallery.file_name(images["path"].iat[row]),
                          details=False)  # the larger link beside it
        with b:
            st.markdown(f"`{images['path'].iat[row]}` · label **{images['label'].iat[row]}**")
            ui.nav_link("image", "Open its detail view", ctx, icon=":material/info:", id=current)
    elif hover:
        st.caption("Switch the thumbnails off to click a point open or draw a lasso.")
    else:
        st.caption("Click a point to see its image here (through the safe view); draw a lasso to select several.")
