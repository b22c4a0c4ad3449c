import {
  Box,
  Button,
  EmptyState,
  Field,
  Flex,
  HStack,
  Heading,
  Input,
  NativeSelect,
  Spinner,
  Stack,
  Switch,
  Tabs,
  Text,
} from "@chakra-ui/react";
import { useCallback, useDeferredValue, useEffect, useMemo, useRef, useState } from "react";
import { useSearchParams } from "react-router-dom";

import { ActionDialog, type Pending } from "./ActionDialog";
import {
  applicationPath,
  type ApplicationsResponse,
  type Cluster,
  type ClustersResponse,
  type FirewallsResponse,
  type LoadBalancersResponse,
  type ServerGroup,
} from "./api";
import { ClusterGrid, groupKey } from "./ClusterGrid";
import { Details } from "./Details";
import { AccountErrors, ErrorNotice } from "./ErrorNotice";
import { plural, timeOfDay, upText } from "./format";
import { ClusterHistory } from "./History";
import { usePolled, useStored } from "./hooks";
import { AuditTrail, FirewallTable, LoadBalancerTable } from "./Tables";

/** How often the page reads the clusters again (the API's cache is fresh for 5 s). */
export const REFRESH_MS = 5000;
/** Where the browser keeps the application the page showed last. */
export const LAST_APPLICATION = "gennaker.clusters.application";
const NO_STACK = "(none)";
const TABS = ["clusters", "loadBalancers", "firewalls", "audit"] as const;
type Tab = (typeof TABS)[number];

type Filters = { account: string; region: string; stack: string; q: string };

const matches = (g: ServerGroup, needle: string): boolean =>
  g.name.toLowerCase().includes(needle) ||
  (g.image.version ?? "").toLowerCase().includes(needle) ||
  (g.image.name ?? "").toLowerCase().includes(needle) ||
  g.image.id.toLowerCase().includes(needle) ||
  (g.createdBy?.dagId.toLowerCase().includes(needle) ?? false) ||
  (g.createdBy?.runId.toLowerCase().includes(needle) ?? false);

/** The clusters and server groups the filters let through (a cluster with none left is left out). */
export function filterClusters(clusters: Cluster[], f: Filters): Cluster[] {
  const needle = f.q.trim().toLowerCase();
  const stack = f.stack === NO_STACK ? "" : f.stack;
  const shown: Cluster[] = [];
  for (const c of clusters) {
    if ((f.account && c.account !== f.account) || (f.stack && c.stack !== stack)) continue;
    let groups = c.serverGroups;
    if (f.region) groups = groups.filter((g) => g.region === f.region);
    if (needle && !c.name.toLowerCase().includes(needle)) groups = groups.filter((g) => matches(g, needle));
    if (groups.length === 0) continue;
    shown.push(groups === c.serverGroups ? c : { ...c, serverGroups: groups });
  }
  return shown;
}

const distinct = (values: Iterable<string>): string[] => [...new Set(values)].sort();

/** The Clusters page: an application's clusters, server groups and instances, and actions on them. */
export function ClustersPage() {
  const [params, setParams] = useSearchParams();
  const [auto, setAuto] = useStored<boolean>("gennaker.clusters.autoRefresh", true);
  const [remembered, remember] = useStored<string>(LAST_APPLICATION, "");
  const everyMs = auto ? REFRESH_MS : null;

  const apps = usePolled<ApplicationsResponse>("applications", auto ? 6 * REFRESH_MS : null);
  const names = useMemo(() => (apps.data?.applications ?? []).map((a) => a.name), [apps.data]);
  const application = params.get("application") ?? "";

  const update = useCallback(
    (changes: Record<string, string | null>) =>
      setParams(
        (old) => {
          const next = new URLSearchParams(old);
          for (const [key, value] of Object.entries(changes)) {
            if (value === null || value === "") next.delete(key);
            else next.set(key, value);
          }
          return next;
        },
        { replace: true },
      ),
    [setParams],
  );

  // No application asked for: the one last looked at, else the first.
  useEffect(() => {
    if (application === "" && names.length > 0) {
      update({ application: names.includes(remembered) ? remembered : names[0] });
    }
  }, [application, names, remembered, update]);
  useEffect(() => {
    if (application !== "") remember(application);
  }, [application, remember]);

  const clusters = usePolled<ClustersResponse>(
    application ? `${applicationPath(application)}/clusters` : null,
    everyMs,
  );
  const tab: Tab = (TABS as readonly string[]).includes(params.get("tab") ?? "")
    ? (params.get("tab") as Tab)
    : "clusters";

  const [text, setText] = useState(params.get("q") ?? "");
  const q = useDeferredValue(text);
  const account = params.get("account") ?? "";
  const region = params.get("region") ?? "";
  const stack = params.get("stack") ?? "";
  const filters: Filters = useMemo(() => ({ account, region, stack, q }), [account, region, stack, q]);
  // Clusters that did not change since the last read keep their object, so their rows are not drawn again.
  const previous = useRef(new Map<string, { json: string; cluster: Cluster }>());
  const all = useMemo(() => {
    const fresh = clusters.data?.clusters;
    if (fresh === undefined) return undefined;
    performance.mark("gennaker:clusters-data");
    const kept = new Map<string, { json: string; cluster: Cluster }>();
    const result = fresh.map((c) => {
      const key = `${c.account}/${c.name}`;
      const json = JSON.stringify(c);
      const old = previous.current.get(key);
      const cluster = old !== undefined && old.json === json ? old.cluster : c;
      kept.set(key, { json, cluster });
      return cluster;
    });
    previous.current = kept;
    return result;
  }, [clusters.data]);
  const shown = useMemo(() => filterClusters(all ?? [], filters), [all, filters]);

  // The selected server group: from a click, or from the URL (the operator extra link of a deploy task).
  const wanted = params.get("serverGroup") ?? "";
  const wantedAccount = params.get("sgAccount") ?? "";
  const wantedRegion = params.get("sgRegion") ?? "";
  const found = useMemo(() => {
    for (const c of all ?? []) {
      for (const g of c.serverGroups) {
        if (
          g.name === wanted &&
          (!wantedAccount || g.account === wantedAccount) &&
          (!wantedRegion || g.region === wantedRegion)
        ) {
          return { group: g, cluster: c };
        }
      }
    }
    return undefined;
  }, [all, wanted, wantedAccount, wantedRegion]);
  const selectedCluster = found ? shown.findIndex((c) => c.name === found.cluster.name && c.account === found.cluster.account) : -1;

  // Bring a group selected by the URL into view once, when it first shows up.
  const scrolled = useRef("");
  useEffect(() => {
    if (found === undefined || scrolled.current === wanted) return;
    scrolled.current = wanted;
    window.requestAnimationFrame(() =>
      document
        .querySelector(`[data-testid="server-group"][data-name="${CSS.escape(wanted)}"]`)
        ?.scrollIntoView({ block: "center" }),
    );
  }, [found, wanted]);

  const select = useCallback(
    (g: ServerGroup) => update({ serverGroup: g.name, sgAccount: g.account, sgRegion: g.region }),
    [update],
  );
  const [pending, setPending] = useState<Pending | undefined>();
  const [history, setHistory] = useState<Cluster | undefined>();
  const [version, setVersion] = useState(0);
  const refreshClusters = clusters.refresh;
  const changed = useCallback(() => {
    refreshClusters();
    setVersion((v) => v + 1);
  }, [refreshClusters]);
  const onRollback = useCallback((c: Cluster) => setPending({ kind: "rollback", cluster: c }), []);

  const canEdit = clusters.data?.permissions.edit ?? false;
  const accounts = distinct((all ?? []).map((c) => c.account));
  const regions = distinct((all ?? []).flatMap((c) => c.regions));
  const stacks = distinct((all ?? []).map((c) => c.stack || NO_STACK));
  const groups = shown.reduce((n, c) => n + c.serverGroups.length, 0);

  if (apps.error && apps.data === undefined) {
    return (
      <Box p={4}>
        <ErrorNotice error={apps.error} />
      </Box>
    );
  }
  if (apps.data !== undefined && names.length === 0) {
    return (
      <EmptyState.Root data-testid="no-applications">
        <EmptyState.Content>
          <EmptyState.Title>No applications yet</EmptyState.Title>
          <EmptyState.Description>
            An application shows up here once a pipeline has deployed a server group of it (or when you may read none of
            them).
          </EmptyState.Description>
        </EmptyState.Content>
      </EmptyState.Root>
    );
  }

  return (
    // While a group's details are open (a drawer on the right), wide screens keep the grid beside it, not under it.
    <Stack gap={4} p={2} pe={{ base: 2, xl: wanted ? "34rem" : 2 }} data-testid="clusters-page">
      <Flex gap={3} align="end" wrap="wrap">
        <Heading as="h2" size="lg">
          Clusters
        </Heading>
        <Field.Root width="auto">
          <Field.Label fontSize="xs">Application</Field.Label>
          <NativeSelect.Root size="sm" width="14rem">
            <NativeSelect.Field
              aria-label="Application"
              data-testid="application-picker"
              value={application}
              onChange={(e) => update({ application: e.target.value, serverGroup: null, sgAccount: null, sgRegion: null })}
            >
              {application !== "" && !names.includes(application) ? <option value={application}>{application}</option> : null}
              {(apps.data?.applications ?? []).map((a) => (
                <option key={a.name} value={a.name}>
                  {a.name} ({plural(a.serverGroupCount, "server group")})
                </option>
              ))}
            </NativeSelect.Field>
            <NativeSelect.Indicator />
          </NativeSelect.Root>
        </Field.Root>
        <Box flex="1" />
        <HStack gap={3}>
          <Text fontSize="xs" color="fg.muted" data-testid="updated-at">
            {clusters.fetchedAt ? `updated ${timeOfDay(clusters.fetchedAt)}` : ""}
          </Text>
          <Switch.Root size="sm" checked={auto} onCheckedChange={(e) => setAuto(e.checked)}>
            <Switch.HiddenInput />
            <Switch.Control />
            <Switch.Label>Auto-refresh</Switch.Label>
          </Switch.Root>
          <Button size="xs" variant="outline" onClick={changed}>
            Refresh
          </Button>
        </HStack>
      </Flex>

      <Tabs.Root
        value={tab}
        onValueChange={(e) => update({ tab: e.value === "clusters" ? null : e.value })}
        variant="line"
        size="sm"
        lazyMount
      >
        <Tabs.List>
          <Tabs.Trigger value="clusters">Clusters</Tabs.Trigger>
          <Tabs.Trigger value="loadBalancers">Load balancers</Tabs.Trigger>
          <Tabs.Trigger value="firewalls">Firewalls</Tabs.Trigger>
          <Tabs.Trigger value="audit">Audit trail</Tabs.Trigger>
        </Tabs.List>

        <Tabs.Content value="clusters">
          <Stack gap={3}>
            <Flex gap={3} wrap="wrap" align="end" data-testid="filters">
              <Choice label="Account" value={filters.account} options={accounts} onChange={(v) => update({ account: v })} />
              <Choice label="Region" value={filters.region} options={regions} onChange={(v) => update({ region: v })} />
              <Choice label="Stack" value={filters.stack} options={stacks} onChange={(v) => update({ stack: v })} />
              <Field.Root width="16rem">
                <Field.Label fontSize="xs">Search</Field.Label>
                <Input
                  size="sm"
                  aria-label="Search"
                  placeholder="server group, version, pipeline…"
                  value={text}
                  onChange={(e) => {
                    setText(e.target.value);
                    update({ q: e.target.value });
                  }}
                />
              </Field.Root>
              {filters.account || filters.region || filters.stack || text ? (
                <Button
                  size="sm"
                  variant="ghost"
                  onClick={() => {
                    setText("");
                    update({ account: null, region: null, stack: null, q: null });
                  }}
                >
                  Clear filters
                </Button>
              ) : null}
            </Flex>
            {clusters.error ? <ErrorNotice error={clusters.error} /> : null}
            <AccountErrors errors={clusters.data?.accountErrors ?? []} />
            {clusters.data === undefined ? (
              clusters.error ? null : (
                <HStack color="fg.muted">
                  <Spinner size="sm" /> <Text>Loading the clusters of {application}…</Text>
                </HStack>
              )
            ) : (
              <>
                <Text fontSize="sm" color="fg.muted" data-testid="summary">
                  {plural(shown.length, "cluster")}, {plural(groups, "server group")},{" "}
                  {upText(
                    shown.reduce(
                      (sum, c) => {
                        for (const key of Object.keys(sum) as (keyof typeof sum)[]) sum[key] += c.instanceCounts[key];
                        return sum;
                      },
                      { up: 0, down: 0, starting: 0, outOfService: 0, unknown: 0, total: 0 },
                    ),
                  )}
                  {canEdit ? "" : " · read-only"}
                </Text>
                {shown.length === 0 ? (
                  <Text color="fg.muted" data-testid="clusters-grid">
                    {all && all.length > 0 ? "No server group matches the filters." : `${application} has no clusters.`}
                  </Text>
                ) : (
                  <ClusterGrid
                    clusters={shown}
                    selected={found ? groupKey(found.group) : undefined}
                    selectedCluster={selectedCluster}
                    canEdit={canEdit}
                    onSelect={select}
                    onHistory={setHistory}
                    onRollback={onRollback}
                  />
                )}
              </>
            )}
          </Stack>
        </Tabs.Content>
        <Tabs.Content value="loadBalancers">
          <LoadBalancersTab application={application} everyMs={everyMs} />
        </Tabs.Content>
        <Tabs.Content value="firewalls">
          <FirewallsTab application={application} everyMs={everyMs} />
        </Tabs.Content>
        <Tabs.Content value="audit">
          <AuditTrail application={application} version={version} />
        </Tabs.Content>
      </Tabs.Root>

      <Details
        group={found?.group}
        cluster={found?.cluster}
        missing={wanted && found === undefined && all !== undefined ? wanted : undefined}
        everyMs={everyMs}
        version={version}
        onClose={() => update({ serverGroup: null, sgAccount: null, sgRegion: null })}
        onAction={setPending}
      />
      <ActionDialog pending={pending} onClose={() => setPending(undefined)} onChanged={changed} />
      <ClusterHistory cluster={history} onClose={() => setHistory(undefined)} />
    </Stack>
  );
}

function Choice(props: { label: string; value: string; options: string[]; onChange: (value: string) => void }) {
  return (
    <Field.Root width="10rem">
      <Field.Label fontSize="xs">{props.label}</Field.Label>
      <NativeSelect.Root size="sm">
        <NativeSelect.Field aria-label={props.label} value={props.value} onChange={(e) => props.onChange(e.target.value)}>
          <option value="">all</option>
          {props.value !== "" && !props.options.includes(props.value) ? (
            <option value={props.value}>{props.value}</option>
          ) : null}
          {props.options.map((o) => (
            <option key={o} value={o}>
              {o}
            </option>
          ))}
        </NativeSelect.Field>
        <NativeSelect.Indicator />
      </NativeSelect.Root>
    </Field.Root>
  );
}

function LoadBalancersTab({ application, everyMs }: { application: string; everyMs: number | null }) {
  const lbs = usePolled<LoadBalancersResponse>(application ? `${applicationPath(application)}/loadBalancers` : null, everyMs);
  if (lbs.error) return <ErrorNotice error={lbs.error} />;
  if (lbs.data === undefined) return <Spinner size="sm" />;
  return (
    <Stack gap={3}>
      <AccountErrors errors={lbs.data.accountErrors} />
      <LoadBalancerTable loadBalancers={lbs.data.loadBalancers} />
    </Stack>
  );
}

function FirewallsTab({ application, everyMs }: { application: string; everyMs: number | null }) {
  const fws = usePolled<FirewallsResponse>(application ? `${applicationPath(application)}/firewalls` : null, everyMs);
  if (fws.error) return <ErrorNotice error={fws.error} />;
  if (fws.data === undefined) return <Spinner size="sm" />;
  return (
    <Stack gap={3}>
      <AccountErrors errors={fws.data.accountErrors} />
      <FirewallTable firewalls={fws.data.firewalls} />
    </Stack>
  );
}
