// The dashboard shell: sign-in gate, hash routes (#/playground …), focus on page change.

import { api, clearKey, getKey } from "./api.js";
import { announce, fill } from "./dom.js";
import * as evals from "./pages/evals.js";
import * as models from "./pages/models.js";
import * as playground from "./pages/playground.js";
import * as signin from "./pages/signin.js";
import * as tuning from "./pages/tuning.js";
import * as usage from "./pages/usage.js";

const PAGES = { playground, models, tuning, usage, evals };
const DEFAULT_PAGE = "playground";
const main = document.getElementById("main");
let cleanup = null;
let me = null;
let isFirstPage = true; // on load, focus stays at the top so Tab reaches the skip link first

function parseHash() {
  const [name, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  return { name: name || DEFAULT_PAGE, params: new URLSearchParams(query) };
}

function showChrome(signedIn) {
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  if (signedIn && me) {
    const role = me.is_admin ? "admin" : `key ${me.key_id || ""}`;
    const mode = me.open_mode ? " · open dev mode" : "";
    document.getElementById("who-text").textContent = `Tenant ${me.tenant} (${role})${mode}`;
  }
}

async function render() {
  if (cleanup) cleanup();
  cleanup = null;
  const { name, params } = parseHash();
  if (!getKey()) {
    me = null;
    showChrome(false);
    document.title = "Sign in · ownllm";
    cleanup = signin.mount(main, { onSignedIn: signedIn });
    isFirstPage = false;
    return;
  }
  if (!me) {
    try {
      me = await api("/v1/dashboard/me");
    } catch (error) {
      if (error.status === 401) return signOut(error.message);
      me = { tenant: "?", scopes: [], is_admin: false };
    }
  }
  showChrome(true);
  const page = PAGES[name] || PAGES[DEFAULT_PAGE];
  const pageName = PAGES[name] ? name : DEFAULT_PAGE;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === pageName) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  fill(main);
  cleanup = page.mount(main, { me, params }) || null;
  document.title = `${page.TITLE} · ownllm`;
  const heading = main.querySelector("h1");
  if (heading) heading.tabIndex = -1;
  if (heading && !isFirstPage) heading.focus({ preventScroll: true });
  isFirstPage = false;
  announce(`${page.TITLE} page`);
}

function signedIn(info) {
  me = info;
  if (!location.hash || location.hash === "#/") location.hash = `#/${DEFAULT_PAGE}`;
  else render();
}

function signOut(reason) {
  if (!getKey()) return; // several requests refused at once: sign out once
  clearKey();
  me = null;
  if (reason) sessionStorage.setItem("ownllm.signinReason", reason);
  render();
}

window.addEventListener("hashchange", render);
window.addEventListener("ownllm:unauthorized", () => signOut("Your key was refused; sign in again."));
document.getElementById("sign-out").addEventListener("click", () => signOut());
render();
