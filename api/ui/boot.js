// Inlined into the page's <head> by the server (its hash is in the page's Content-Security-Policy),
// so it runs before anything is drawn or fetched.
(function () {
  // Behind a reverse proxy under a path prefix, "/prefix" without its slash would resolve every
  // relative URL of the page against the parent folder: add the slash first.
  if (location.pathname.slice(-1) !== '/') {
    location.replace(location.pathname + '/' + location.search + location.hash);
    return;
  }
  // The chosen theme before the first paint, so a dark page does not flash light.
  try {
    var theme = localStorage.getItem('imgfleet.theme');
    if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
  } catch (e) {
    // No storage (private mode): the system's colour scheme applies.
  }
})();
