"""Zero-shot: class names and prompt templates in, predictions and their quality out."""

import pandas as pd
import streamlit as st

from lib import charts, gallery, ui
from lib.catalog import ModelChoice
from lib.metrics import metrics_at_threshold
from lib.zeroshot import class_sets, load_classes, load_templates, template_sets

ctx = ui.setup("Zero-shot", ":material/label:")
st.title("Zero-shot classification")
st.caption("Each class's texts are placed in every template, encoded by the model's text tower and averaged; "
           "an image's class probabilities are the softmax of the model's logit scale × cosine similarity.")

with ui.guard():
    ds = ctx.require_dataset()
    options = ctx.text_models()
    keys = [c.key for c in options]
    ready = {c.key for c in options if ui.ready_offline(c)}
    default = ctx.model.key if ctx.model is not None and ctx.model.key in ready else \
        next((k for k in keys if k in ready), None)
    if default is None:
        st.info("**No model with a text tower has its weights on this machine.** Put them in the Hugging Face "
                "cache (run once on a connected machine), or pass a local checkpoint "
                f"(`{ui.CLI} zeroshot {ctx.name} --model open_clip:ViT-B-32@/path/weights.safetensors`). To try "
                "the pipeline offline, tick *Use random weights (testing only)* in the sidebar (meaningless outputs).")
        default = keys[0] if keys else None
    if st.session_state.get("zs-model") not in keys:
        st.session_state["zs-model"] = default
    model_key = st.selectbox("Model (with a text tower)", keys, key="zs-model",
                             format_func=lambda k: ModelChoice.from_key(k).label + ("" if k in ready else
                                                                                    " (weights not here)"),
                             help="Models cached for this dataset, the known aliases (need their weights), and — "
                                  "with *Use random weights (testing only)* ticked in the sidebar — the tiny "
                                  "random-weight test model.")
    choice = ModelChoice.from_key(model_key)
    if not ctx.random_ok:
        st.caption("Offline without weights? Tick **Use random weights (testing only)** in the sidebar to try the "
                   "tiny test model.")

    c1, c2, c3 = st.columns(3)
    base = c1.selectbox("Start from class set", class_sets(), index=class_sets().index("medgore")
                        if "medgore" in class_sets() else 0, key="zs-base")
    ref = load_classes(base)
    tsets = template_sets()
    tdefault = ref.templates if ref.templates in tsets else "generic"
    tbase = c2.selectbox("Template set", tsets, index=tsets.index(tdefault) if tdefault in tsets else 0,
                         key=f"zs-tbase-{base}")
    label_cols = [c for c in ds.images.columns if c not in ("id", "path", "width", "height", "format",
                                                           "duplicate_of", "caption", "mask")]
    label_col = c3.selectbox("Truth column", label_cols, index=label_cols.index(ref.label_column)
                             if ref.label_column in label_cols else 0, key="zs-labelcol")

    with st.form("zs-run"):
        e1, e2 = st.columns([3, 2])
        table = pd.DataFrame({"class": list(ref.classes),
                              "texts (| between several; empty: the class name)":
                                  [" | ".join(ref.texts.get(c, ())) for c in ref.classes]})
        edited = e1.data_editor(table, num_rows="dynamic", hide_index=True, width="stretch", key=f"zs-classes-{base}")
        tmpl = e2.text_area("Templates, one per line ({c} is replaced by each class text)",
                            "\n".join(load_templates(tbase).templates), height=160, key=f"zs-templates-{tbase}")
        run = st.form_submit_button("Run zero-shot", type="primary", icon=":material/play_arrow:")

    if run:
        names = [str(n) for n in edited["class"].tolist() if isinstance(n, str) and n.strip()]
        text_col = edited.columns[1]
        texts = {str(r["class"]).strip(): [t for t in str(r[text_col] or "").split("|")]
                 for _, r in edited.iterrows() if isinstance(r["class"], str)}
        classes = gallery.edited_class_set(base, names, texts=texts)
        templates = [t.strip() for t in tmpl.splitlines() if t.strip()]
        load_templates(templates)  # validates ({c} in each) before any model work
        st.session_state["zs-last"] = {"dataset": ctx.name, "choice": choice.key, "classes": classes,
                                       "templates": templates, "label_col": label_col}

    last = st.session_state.get("zs-last")
    if last and last["dataset"] == ctx.name:
        used = ModelChoice.from_key(last["choice"])
        if ctx.require_text(used, "Zero-shot classification"):
            res = ui.zeroshot_run(ctx.name, used, last["classes"], last["templates"], last["label_col"])
            preds = res.predictions
            st.success(f"{gallery.plural(len(preds), 'image')} classified by `{used.label}` into "
                       f"{', '.join(res.classes.classes)} with {gallery.plural(len(last['templates']), 'template')}.")
            if res.path is not None:
                st.caption(f"Predictions saved to `{res.path}`; pick it in the sidebar under *Predictions that flag "
                           "images* to let the safe view use it.")
            counts = preds["pred"].value_counts().reindex(list(res.classes.classes), fill_value=0)
            st.dataframe(pd.DataFrame([counts.to_dict()], index=["predicted"]), width="stretch")
            if res.metrics is None:
                st.info(f"No value of column `{last['label_col']}` maps to these classes, so there are no metrics. "
                        "Name the classes like the dataset's labels, or start from a class set whose label map "
                        "covers them.")
            else:
                st.subheader(f"Metrics on {gallery.plural(res.n_scored, 'labelled image')}")
                if res.n_unmapped:
                    st.caption(f"{gallery.plural(res.n_unmapped, 'image')} with labels outside these classes are left out.")
                m = res.metrics_table()
                st.dataframe(pd.DataFrame([dict(zip(m["metric"], m["value"].astype(float), strict=True))]),
                             hide_index=True, width="stretch")
                a, b = st.columns(2)
                a.plotly_chart(charts.confusion_heatmap(res.confusion), width="stretch")
                b.dataframe(res.per_class, width="stretch")

                positive = res.positive
                if positive is not None and "score" in preds:
                    st.subheader(f"Operating point (positive class: {positive})")
                    scored = preds[preds["truth"].notna()]
                    thr = st.slider("Threshold on p(" + str(positive) + ")", 0.0, 1.0, 0.5, 0.01, key="zs-thr")
                    at = metrics_at_threshold(scored["truth"].astype(str), scored["score"], thr, positive=positive)
                    k = st.columns(5)
                    k[0].metric("Precision", f"{at['precision']:.3f}")
                    k[1].metric("Recall", f"{at['recall']:.3f}")
                    k[2].metric("F1", f"{at['f1']:.3f}")
                    k[3].metric("Double F1", f"{at['double_f1']:.3f}")
                    k[4].metric("Flagged", f"{at['flagged']} / {at['n']}")
                    if scored["truth"].nunique() == 2:
                        roc, pr = charts.roc_pr_curves(scored["truth"], scored["score"], positive, thr,
                                                       operating_points=True)
                        r1, r2 = st.columns(2)
                        r1.plotly_chart(roc, width="stretch")
                        r2.plotly_chart(pr, width="stretch")

                    st.subheader("Mistakes at this threshold")
                    wrong = gallery.mistakes(preds, positive, thr)
                    fp, fn = wrong[wrong["kind"] == "FP"], wrong[wrong["kind"] == "FN"]
                    t1, t2 = st.tabs([f"False positives ({len(fp)})", f"False negatives ({len(fn)})"])

                    def caption(rec) -> str:
                        return f"truth {rec['truth']} · p {rec['score']:.2f}"

                    with t1:
                        ui.image_grid(ctx, fp.head(24), key="zs-fp", columns=6, caption=caption)
                    with t2:
                        ui.image_grid(ctx, fn.head(24), key="zs-fn", columns=6, caption=caption)
    else:
        st.info("Edit the classes and templates, then **Run zero-shot**.")
