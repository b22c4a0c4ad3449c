/**
 * The Clusters API (docs/clusters-api.md): its shapes and the calls the page makes.
 *
 * The page runs inside the Airflow UI, so the browser sends Airflow's `_token` cookie with
 * every same-origin request; actions are JSON POSTs (the API refuses anything else, and a
 * cookie-authenticated POST from another origin). Paths resolve against the page's
 * `<base href>`, so an Airflow served under a path (`[api] base_url`) works as is.
 */

export type Permissions = { read: boolean; edit: boolean };
export type Capacity = { min: number; max: number; desired: number };
export type InstanceCounts = {
  up: number;
  down: number;
  starting: number;
  outOfService: number;
  unknown: number;
  total: number;
};
export type AccountError = { account: string; status: number; detail: string };
export type CreatedBy = {
  dagId: string;
  runId: string;
  taskId: string;
  mapIndex: number;
  runUrl: string | null;
};
export type ServerGroup = {
  name: string;
  account: string;
  region: string;
  application: string;
  cluster: string;
  stack: string;
  detail: string;
  sequence: number;
  image: { id: string; name: string | null; package: string | null; version: string | null };
  capacity: Capacity;
  instanceCounts: InstanceCounts;
  enabled: boolean;
  disabledBy: string | null;
  disabledAt: string | null;
  destroying: boolean;
  loadBalancers: string[];
  firewalls: string[];
  createdAt: string;
  createdBy: CreatedBy | null;
};
export type Cluster = {
  name: string;
  account: string;
  application: string;
  stack: string;
  detail: string;
  regions: string[];
  instanceCounts: InstanceCounts;
  enabledServerGroups: string[];
  serverGroups: ServerGroup[]; // newest first
};
export type Health = "Up" | "Down" | "Starting" | "OutOfService" | "Unknown";
export type Instance = {
  id: string;
  address: string;
  host: string;
  port: number | null;
  zone: string | null;
  health: Health;
  healthSince: string;
  healthReason: string;
  launchedAt: string;
  restarts: number;
};
export type LoadBalancer = {
  name: string;
  account: string;
  region: string;
  application: string;
  listeners: { port: number; protocol: string; targetPort: number | null }[];
  clusters: string[];
  dnsName: string | null;
  serverGroups: { serverGroup: string; enabled: boolean; weight: number | null; instanceCounts: InstanceCounts }[];
};
export type Firewall = {
  name: string;
  account: string;
  region: string;
  application: string;
  description: string;
  rules: { protocol: string; portFrom: number; portTo: number; cidr: string | null; sourceFirewall: string | null }[];
  serverGroups: string[];
};
export type OperationStatus = "RUNNING" | "SUCCEEDED" | "FAILED";
export type Operation = {
  id: string;
  kind: string;
  status: OperationStatus;
  done: boolean;
  message: string;
  serverGroup: string | null;
  startedAt: string;
  updatedAt: string;
};
export type AuditStatus = "RUNNING" | "SUCCEEDED" | "FAILED" | "REFUSED" | "FORBIDDEN" | "INTERRUPTED";
export type AuditEntry = {
  id: string;
  at: string;
  user: string;
  action: string;
  application: string;
  account: string;
  region: string | null;
  cluster: string | null;
  serverGroup: string | null;
  instanceId: string | null;
  parameters: Record<string, unknown>;
  reason: string;
  status: AuditStatus;
  httpStatus: number;
  message: string;
  operationIds: string[];
  finishedAt: string | null;
};
export type HistoryEntry = {
  id: number;
  at: string;
  event: string;
  serverGroup: string;
  instanceId: string | null;
  message: string;
  source: null | {
    kind: "pipeline" | "ui";
    dagId: string;
    runId: string;
    taskId: string;
    purpose: string;
    runUrl: string | null;
    actionId: string | null;
    user: string | null;
  };
};

export type ApplicationSummary = {
  name: string;
  accounts: string[];
  clusterCount: number;
  serverGroupCount: number;
  instanceCounts: InstanceCounts;
  pipelines: { dagId: string; url: string }[];
  permissions: Permissions;
};
export type ApplicationsResponse = {
  applications: ApplicationSummary[];
  snapshotAt: string | null;
  accountErrors: AccountError[];
};
export type ClustersResponse = {
  application: string;
  permissions: Permissions;
  clusters: Cluster[];
  snapshotAt: string | null;
  accountErrors: AccountError[];
};
export type ServerGroupResponse = {
  application: string;
  permissions: Permissions;
  serverGroup: ServerGroup;
  instances: Instance[];
  tags: Record<string, string>;
  loadBalancers: LoadBalancer[];
  firewalls: Firewall[];
  snapshotAt: string;
};
export type LoadBalancersResponse = { loadBalancers: LoadBalancer[]; accountErrors: AccountError[] };
export type FirewallsResponse = { firewalls: Firewall[]; accountErrors: AccountError[] };
export type HistoryResponse = { entries: HistoryEntry[]; nextBefore: number | null };
export type AuditResponse = { entries: AuditEntry[]; nextBefore: number | null };
export type ActionResponse = { action: AuditEntry; operations: Operation[] };

/** An answer of the API that is not a success: `{detail, type, hint}` (Airflow's own 401 has only `detail`). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    detail: string,
    readonly type: string = "",
    readonly hint: string = "",
  ) {
    super(detail);
  }
}

const seg = encodeURIComponent;

/** The path of a server group under the API, e.g. `applications/hello/serverGroups/local/local/hello-prod-v003`. */
export const serverGroupPath = (g: Pick<ServerGroup, "application" | "account" | "region" | "name">): string =>
  `applications/${seg(g.application)}/serverGroups/${seg(g.account)}/${seg(g.region)}/${seg(g.name)}`;

export const clusterPath = (application: string, account: string, cluster: string): string =>
  `applications/${seg(application)}/clusters/${seg(account)}/${seg(cluster)}`;

export const applicationPath = (application: string): string => `applications/${seg(application)}`;

/** `path` (relative to the API root) as an absolute URL of this Airflow. */
export const apiUrl = (path: string): URL => new URL(`gennaker/api/${path}`, document.baseURI);

/** Where a path of the Airflow UI (`/dags/...`, as the API's runUrl) is, under the UI's base path. */
export const uiHref = (path: string): string => new URL(path.replace(/^\//, ""), document.baseURI).href;

async function answer<T>(response: Response): Promise<T> {
  if (response.ok) {
    return (await response.json()) as T;
  }
  let body: { detail?: unknown; type?: string; hint?: string } = {};
  try {
    body = await response.json();
  } catch {
    // not JSON (a proxy's error page): the status says enough
  }
  const detail =
    typeof body.detail === "string"
      ? body.detail
      : body.detail !== undefined
        ? JSON.stringify(body.detail)
        : `${response.status} ${response.statusText}`;
  throw new ApiError(response.status, detail, body.type ?? "", body.hint ?? "");
}

async function fetchJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await fetch(apiUrl(path), {
    credentials: "same-origin",
    headers: { Accept: "application/json" },
    signal,
  });
  return answer<T>(response);
}

/** Reads started before the page rendered (when its bundle was loaded), each used once, if still fresh. */
const early = new Map<string, { at: number; answer: Promise<unknown> }>();
const EARLY_MS = 10_000;

/** Start reading `path` now; the page's first `getJson(path)` takes the answer. */
export function prefetch(path: string): void {
  const answer = fetchJson(path);
  answer.catch(() => undefined); // a failure is reported to whoever uses the answer
  early.set(path, { at: Date.now(), answer });
}

export async function getJson<T>(path: string, signal?: AbortSignal): Promise<T> {
  const started = early.get(path);
  if (started !== undefined) {
    early.delete(path);
    if (Date.now() - started.at < EARLY_MS) return started.answer as Promise<T>;
  }
  return fetchJson<T>(path, signal);
}

export async function postJson<T>(path: string, body: object): Promise<T> {
  const response = await fetch(apiUrl(path), {
    method: "POST",
    credentials: "same-origin",
    headers: { Accept: "application/json", "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  return answer<T>(response);
}
