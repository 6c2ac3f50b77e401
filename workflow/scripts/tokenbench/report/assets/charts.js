// Draw every tokenbench chart on the page. Specs are inlined in the page (window.TB_SPECS), so this
// works from file:// too; the data behind each chart is linked under it (CSV, JSON), so vega-embed's
// own action menu is off (it also clashed with the theme's <details> styling).
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll(".tb-chart").forEach(function (el) {
    var spec = (window.TB_SPECS || {})[el.dataset.spec];
    if (!spec) { el.textContent = "chart spec missing: " + el.dataset.spec; return; }
    vegaEmbed(el, spec, {actions: false, renderer: "svg"})
      .catch(function (err) { el.textContent = "chart failed to render: " + err; console.error(err); });
  });
});
