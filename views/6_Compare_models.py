"""Compare models: metrics on one task, agreement, neighbourhood overlap and maps side by side."""

import streamlit as st

from lib import charts, compare, gallery, ui
from lib.catalog import ModelChoice
from lib.zeroshot import class_sets, load_classes, load_templates

ctx = ui.setup("Compare models", ":material/compare_arrows:")
st.title("Compare models")

with ui.guard():
    ds = ctx.require_dataset()
    images = ds.images
    embedded = [c for c in ctx.models() if ctx.is_embedded(c)]
    hidden = [c for c in ui.embedded_models(ctx.name) if c not in embedded]
    if len(embedded) < 2:
        more = (f" {', '.join(c.label for c in hidden)} {'is' if len(hidden) == 1 else 'are'} embedded too: tick "
                "*Use random weights (testing only)* in the sidebar to compare with "
                f"{'it' if len(hidden) == 1 else 'them'}." if hidden else "")
        st.info(
            f"**Comparing needs the dataset embedded with at least two models** (now: "
            f"{', '.join(c.label for c in embedded) or 'none'}).{more} Embed it on the Home page, or run e.g.:\n\n"
            f"```bash\n{ui.CLI} embed {ctx.name} --model color\n{ui.CLI} embed {ctx.name} --model clip-b32\n```\n"
            "Offline, the tiny test model works with random weights (tick *Use random weights* in the sidebar): "
            f"`{ui.CLI} embed {ctx.name} --model open_clip:WB-Tiny-ViT --random-weights`.")
        st.stop()
    keys = [c.key for c in embedded]
    chosen_keys = st.multiselect("Models", keys, default=keys[:2], key="cm-models",
                                 format_func=lambda k: ModelChoice.from_key(k).short)
    chosen = [ModelChoice.from_key(k) for k in chosen_keys]
    if len(chosen) < 2:
        st.info("Choose at least two models.")
        st.stop()
    task = st.radio("Task", ["Linear probe on the labels (5-fold)", "Zero-shot (text models)"], horizontal=True,
                    key="cm-task")

    t_metrics, t_neigh, t_maps = st.tabs(["Metrics & agreement", "Neighbourhoods", "Maps"])

    preds = {}
    with t_metrics:
        if task.startswith("Linear"):
            ctx.require_labels("a linear probe")
            preds = {c.label: ui.probe_run(ctx.name, c).predictions for c in chosen}
        else:
            text = [c for c in chosen if c.has_text]
            if len(text) < 2:
                st.info("Zero-shot comparison needs two models with a text tower among the chosen ones "
                        f"(`color` has none). Embed a CLIP-style model: `{ui.CLI} embed {ctx.name} --model clip-b32`.")
            else:
                cs_name = st.selectbox("Class set", class_sets(), key="cm-classes",
                                       index=class_sets().index("medgore") if "medgore" in class_sets() else 0)
                cs = load_classes(cs_name)
                templates = list(load_templates(cs.templates or "generic").templates)
                preds = {c.label: gallery.zeroshot_predictions(
                    ui.zeroshot_run(ctx.name, c, cs, templates).predictions) for c in text}
        if preds:
            st.subheader("Metrics")
            table = compare.metrics_table(preds)
            st.dataframe(compare.for_display(table), hide_index=True, width="stretch")
            a, b = st.columns(2)
            a.plotly_chart(charts.matrix_heatmap(gallery.agreement_matrix(preds, "kappa"), "Cohen's kappa"),
                           width="stretch")
            b.plotly_chart(charts.matrix_heatmap(gallery.agreement_matrix(preds, "percent_agreement"),
                                                 "Agreement (share of images)", zmin=0.0), width="stretch")
            agree = compare.agreement_table(preds)
            dis = compare.disagreements(agree)
            st.subheader(f"Where they disagree ({len(dis)} of {gallery.plural(len(agree), 'image')})")
            if len(dis):
                size = 18
                n_pages = gallery.page_bounds(len(dis), size, 1)[2]
                page = st.number_input(f"Page (of {n_pages})", 1, n_pages, 1, key="cm-dis-page")
                start, stop, _, _ = gallery.page_bounds(len(dis), size, page)
                part = dis.iloc[start:stop].assign(row=gallery.rows_of_ids(images, dis["id"].iloc[start:stop]))
                pcols = [c for c in part.columns if c.startswith("pred:")]

                def caption(rec) -> str:
                    preds_txt = " · ".join(f"{charts.short_name(c[5:], 16)}: {rec[c]}" for c in pcols)
                    return f"truth {rec['label']} · {preds_txt}"

                ui.image_grid(ctx, part, key="cm-dis", columns=6, caption=caption)

    with t_neigh:
        k = st.slider("k (neighbours per image)", 2, 50, 10, key="cm-k")
        pairs, per_item = ui.overlap(ctx.name, chosen, k)
        st.dataframe(pairs, hide_index=True, width="stretch")
        st.plotly_chart(charts.jaccard_histogram(per_item, k), width="stretch")

    with t_maps:
        m1, m2 = st.columns(2)
        method = m1.radio("Map", ["UMAP", "PCA"], horizontal=True, key="cm-method").lower()
        colour_opts = ["label", "EB"] + (["prediction"] if preds else [])
        colour = m2.radio("Colour by", colour_opts, horizontal=True, key="cm-colour")
        eb = ctx.eb()
        shown = chosen[:3]
        map_cols = st.columns(len(shown))
        picked: list[str] = []
        for i, (c, col) in enumerate(zip(shown, map_cols, strict=True)):
            with col:
                use = method
                if method == "umap" and not ui.projection_cached(ctx.name, c, "umap"):
                    if st.button("Compute the UMAP map (seconds to a minute)", key=f"cm-umap-{i}"):
                        st.session_state[f"cm-umap-ok-{c.key}"] = True
                    if not st.session_state.get(f"cm-umap-ok-{c.key}"):
                        st.caption("PCA preview until the UMAP map is computed.")
                        use = "pca"
                df = gallery.map_frame(ui.projection(ctx.name, c, use), eb, preds.get(c.label))
                fig = charts.image_map(df, colour, title=f"{c.label} ({use.upper()})", hover=("label", "EB"))
                event = st.plotly_chart(fig, on_select="rerun", selection_mode=("points", "box", "lasso"),
                                        key=f"cm-map-{i}-{c.key}", width="stretch")
                picked += [x for x in charts.selected_ids(event) if x not in picked]
        if picked:
            ui.selection_bar(ctx, picked, "Compare models",
                             f"**{gallery.plural(len(picked), 'image')} selected** (safe thumbnails of the first 12):")
            part = eb.iloc[gallery.rows_of_ids(images, picked[:12])]
            ui.image_grid(ctx, part, key="cm-sel", columns=6,
                          caption=lambda r: f"{r['label']} · EB {r['eb']:+.2f}")
        else:
            st.caption("Select points on a map (click, box or lasso) to see their images here, through the safe view.")
