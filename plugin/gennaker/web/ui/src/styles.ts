/**
 * The stylesheet of the clusters grid's server group cards and health bars.
 *
 * The grid draws up to a thousand cards; as Chakra components (style props resolved per element
 * and render) the first screen took several times longer to appear. So the cards are plain
 * elements with these classes, written with the CSS variables of the host's Chakra theme
 * (`--chakra-colors-bg-panel`, ...): they follow Airflow's light and dark mode like the rest.
 */
const CSS = `
.gk-card { display: flex; flex-direction: column; gap: 2px; box-sizing: border-box; width: 11rem;
  padding: 6px 8px; text-align: start; font: inherit; color: var(--chakra-colors-fg); cursor: pointer;
  background: var(--chakra-colors-bg); border: 1px solid var(--chakra-colors-border);
  border-inline-start: 4px solid var(--chakra-colors-gray-muted); border-radius: var(--chakra-radii-md); }
.gk-card[data-state="enabled"] { border-inline-start-color: var(--chakra-colors-green-solid); }
.gk-card[data-state="disabled"] { background: var(--chakra-colors-bg-muted); }
.gk-card[data-state="destroying"] { border-inline-start-color: var(--chakra-colors-red-solid); opacity: 0.6; }
.gk-card:hover { border-color: var(--chakra-colors-fg-muted); }
.gk-card[aria-pressed="true"] { border-color: var(--chakra-colors-fg); box-shadow: 0 0 0 1px var(--chakra-colors-fg); }
.gk-card:focus-visible { outline: 2px solid var(--chakra-colors-blue-solid); outline-offset: 2px; }
.gk-row { display: flex; justify-content: space-between; align-items: center; gap: 4px; }
.gk-name { font-family: var(--chakra-fonts-mono); font-weight: 600; font-size: var(--chakra-font-sizes-sm); }
.gk-small { font-size: var(--chakra-font-sizes-xs); color: var(--chakra-colors-fg-muted);
  overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.gk-badge { font-size: var(--chakra-font-sizes-2xs); line-height: 1.4; padding: 0 4px;
  border-radius: var(--chakra-radii-sm); background: var(--chakra-colors-gray-subtle); color: var(--chakra-colors-gray-fg); }
.gk-badge[data-state="enabled"] { background: var(--chakra-colors-green-subtle); color: var(--chakra-colors-green-fg); }
.gk-badge[data-state="destroying"] { background: var(--chakra-colors-red-subtle); color: var(--chakra-colors-red-fg); }
.gk-bar { display: flex; gap: 1px; height: 6px; margin: 3px 0; overflow: hidden; border-radius: 9999px;
  background: var(--chakra-colors-bg-emphasized); }
.gk-bar > span { flex-basis: 0; }
.gk-up { background: var(--chakra-colors-green-solid); }
.gk-starting { background: var(--chakra-colors-blue-solid); }
.gk-oos { background: var(--chakra-colors-gray-solid); }
.gk-down { background: var(--chakra-colors-red-solid); }
.gk-unknown { background: var(--chakra-colors-gray-muted); }
`;

const ID = "gennaker-clusters-page-styles";

/** Put the stylesheet in the document (once). */
export function installStyles(): void {
  if (typeof document === "undefined" || document.getElementById(ID) !== null) return;
  const style = document.createElement("style");
  style.id = ID;
  style.textContent = CSS;
  document.head.appendChild(style);
}
