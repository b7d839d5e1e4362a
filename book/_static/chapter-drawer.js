// The chapter drawer.  pydata-sphinx-theme 0.17 binds its drawer to the first
// `.primary-toggle` on the page, which under sphinx-book-theme 1.3 is a hidden header
// button, so the visible one did nothing and a phone could not open the chapter list.
// The visible buttons forward to the bound one on narrow screens and show or hide the
// sidebar on wide ones.
document.addEventListener("DOMContentLoaded", () => {
  const toggles = Array.from(document.querySelectorAll(".primary-toggle"));
  const bound = toggles[0];
  const sidebar = document.getElementById("pst-primary-sidebar");
  const wide = window.matchMedia("(min-width: 960px)");
  toggles.slice(1).forEach((button) => {
    button.addEventListener("click", (event) => {
      event.preventDefault();
      event.stopPropagation();
      if (wide.matches && sidebar) {
        sidebar.classList.toggle("sparsity-lab-hidden");
      } else {
        bound.click();
      }
    });
  });
});
