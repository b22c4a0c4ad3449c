import { Badge, Box, Button, Code, HStack, Spinner, Stack, Table, Text } from "@chakra-ui/react";
import { useCallback, useEffect, useState } from "react";

import {
  applicationPath,
  getJson,
  type AuditEntry,
  type AuditResponse,
  type AuditStatus,
  type Firewall,
  type LoadBalancer,
} from "./api";
import { ErrorNotice } from "./ErrorNotice";
import { ago, upText, when } from "./format";
import { HealthBar } from "./HealthBar";

const STATUS_PALETTE: Record<AuditStatus, string> = {
  RUNNING: "blue",
  SUCCEEDED: "green",
  FAILED: "red",
  REFUSED: "orange",
  FORBIDDEN: "orange",
  INTERRUPTED: "gray",
};

/** What an audit entry did, in words: "resize hello-prod-v003 to min 1 / desired 3 / max 3". */
function actionText(e: AuditEntry): string {
  const target = e.instanceId ? `${e.instanceId} of ${e.serverGroup}` : (e.serverGroup ?? e.cluster ?? "");
  const capacity = e.parameters.capacity as { min: number; desired: number; max: number } | undefined;
  const extra =
    e.action === "resize" && capacity
      ? ` to ${capacity.min}/${capacity.desired}/${capacity.max}`
      : e.action === "rollback" && typeof e.parameters.target === "string"
        ? ` to ${e.parameters.target}`
        : "";
  return `${e.action} ${target}${extra}`;
}

/** The audit trail: who did what, when, and how it ended (newest first). */
export function AuditTable({ entries, compact = false }: { entries: AuditEntry[]; compact?: boolean }) {
  if (entries.length === 0) {
    return <Text color="fg.muted">No actions yet.</Text>;
  }
  return (
    <Table.Root size="sm" data-testid={compact ? "server-group-audit" : "audit"} interactive>
      <Table.Header>
        <Table.Row>
          <Table.ColumnHeader>When</Table.ColumnHeader>
          <Table.ColumnHeader>Who</Table.ColumnHeader>
          <Table.ColumnHeader>What</Table.ColumnHeader>
          <Table.ColumnHeader>Status</Table.ColumnHeader>
          {compact ? null : <Table.ColumnHeader>Reason and outcome</Table.ColumnHeader>}
        </Table.Row>
      </Table.Header>
      <Table.Body>
        {entries.map((e) => (
          <Table.Row key={e.id} data-action={e.action} data-status={e.status}>
            <Table.Cell title={when(e.at)} whiteSpace="nowrap">
              {ago(e.at)}
            </Table.Cell>
            <Table.Cell>{e.user}</Table.Cell>
            <Table.Cell>
              <Text fontSize="sm">{actionText(e)}</Text>
              {compact && e.message ? (
                <Text fontSize="xs" color="fg.muted">
                  {e.message}
                </Text>
              ) : null}
            </Table.Cell>
            <Table.Cell>
              <Badge colorPalette={STATUS_PALETTE[e.status]}>{e.status}</Badge>
            </Table.Cell>
            {compact ? null : (
              <Table.Cell>
                {e.reason ? <Text fontSize="sm">“{e.reason}”</Text> : null}
                <Text fontSize="xs" color="fg.muted">
                  {e.message}
                </Text>
              </Table.Cell>
            )}
          </Table.Row>
        ))}
      </Table.Body>
    </Table.Root>
  );
}

/** The application's whole audit trail, a page at a time (the newest first; "Older" for more). */
export function AuditTrail({ application, version }: { application: string; version: number }) {
  const [pages, setPages] = useState<AuditResponse[]>([]);
  const [error, setError] = useState<Error | undefined>();
  const [loading, setLoading] = useState(false);

  const load = useCallback(
    (before: number | null) => {
      setLoading(true);
      const query = before === null ? "" : `&before=${before}`;
      getJson<AuditResponse>(`${applicationPath(application)}/audit?limit=50${query}`)
        .then((page) => {
          setPages((old) => (before === null ? [page] : [...old, page]));
          setError(undefined);
        })
        .catch((e: unknown) => setError(e instanceof Error ? e : new Error(String(e))))
        .finally(() => setLoading(false));
    },
    [application],
  );
  // The newest page again when the application changes or the page refreshes (`version`).
  useEffect(() => load(null), [load, version]);

  const entries = pages.flatMap((p) => p.entries);
  const next = pages.length > 0 ? pages[pages.length - 1].nextBefore : null;
  return (
    <Stack gap={3}>
      {error ? <ErrorNotice error={error} /> : null}
      {pages.length === 0 && loading ? <Spinner /> : <AuditTable entries={entries} />}
      {next !== null ? (
        <HStack>
          <Button size="sm" variant="outline" onClick={() => load(next)} loading={loading}>
            Older
          </Button>
        </HStack>
      ) : null}
    </Stack>
  );
}

export function LoadBalancerTable({ loadBalancers }: { loadBalancers: LoadBalancer[] }) {
  if (loadBalancers.length === 0) return <Text color="fg.muted">No load balancers.</Text>;
  return (
    <Table.Root size="sm" data-testid="load-balancers">
      <Table.Header>
        <Table.Row>
          <Table.ColumnHeader>Load balancer</Table.ColumnHeader>
          <Table.ColumnHeader>Where</Table.ColumnHeader>
          <Table.ColumnHeader>Listeners</Table.ColumnHeader>
          <Table.ColumnHeader>Server groups</Table.ColumnHeader>
        </Table.Row>
      </Table.Header>
      <Table.Body>
        {loadBalancers.map((lb) => (
          <Table.Row key={`${lb.account}/${lb.region}/${lb.name}`}>
            <Table.Cell>
              <Code>{lb.name}</Code>
              {lb.dnsName ? (
                <Text fontSize="xs" color="fg.muted">
                  {lb.dnsName}
                </Text>
              ) : null}
            </Table.Cell>
            <Table.Cell>
              {lb.account}/{lb.region}
            </Table.Cell>
            <Table.Cell>
              {lb.listeners
                .map((l) => `${l.protocol}:${l.port}${l.targetPort ? ` → ${l.targetPort}` : ""}`)
                .join(", ")}
            </Table.Cell>
            <Table.Cell>
              <Stack gap={1}>
                {lb.serverGroups.map((t) => (
                  <HStack key={t.serverGroup} gap={2}>
                    <Code fontSize="xs">{t.serverGroup}</Code>
                    <Badge size="xs" colorPalette={t.enabled ? "green" : "gray"}>
                      {t.enabled ? "in service" : "out of service"}
                    </Badge>
                    <Text fontSize="xs" color="fg.muted">
                      {upText(t.instanceCounts)}
                    </Text>
                    <Box width="5rem">
                      <HealthBar counts={t.instanceCounts} height="4px" />
                    </Box>
                  </HStack>
                ))}
              </Stack>
            </Table.Cell>
          </Table.Row>
        ))}
      </Table.Body>
    </Table.Root>
  );
}

export function FirewallTable({ firewalls }: { firewalls: Firewall[] }) {
  if (firewalls.length === 0) return <Text color="fg.muted">No firewalls.</Text>;
  return (
    <Table.Root size="sm" data-testid="firewalls">
      <Table.Header>
        <Table.Row>
          <Table.ColumnHeader>Firewall</Table.ColumnHeader>
          <Table.ColumnHeader>Where</Table.ColumnHeader>
          <Table.ColumnHeader>Rules (inbound)</Table.ColumnHeader>
          <Table.ColumnHeader>Server groups</Table.ColumnHeader>
        </Table.Row>
      </Table.Header>
      <Table.Body>
        {firewalls.map((fw) => (
          <Table.Row key={`${fw.account}/${fw.region}/${fw.name}`}>
            <Table.Cell>
              <Code>{fw.name}</Code>
              {fw.description ? (
                <Text fontSize="xs" color="fg.muted">
                  {fw.description}
                </Text>
              ) : null}
            </Table.Cell>
            <Table.Cell>
              {fw.account}/{fw.region}
            </Table.Cell>
            <Table.Cell>
              {fw.rules.map((r, i) => (
                <Text key={i} fontSize="sm">
                  {r.protocol} {r.portFrom === r.portTo ? r.portFrom : `${r.portFrom}-${r.portTo}`} from{" "}
                  {r.cidr ?? r.sourceFirewall ?? "anywhere"}
                </Text>
              ))}
            </Table.Cell>
            <Table.Cell>{fw.serverGroups.join(", ") || "none"}</Table.Cell>
          </Table.Row>
        ))}
      </Table.Body>
    </Table.Root>
  );
}
