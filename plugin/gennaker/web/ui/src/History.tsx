import { Badge, Button, CloseButton, Code, Drawer, Portal, Spinner, Stack, Table, Text } from "@chakra-ui/react";
import { useCallback, useEffect, useState } from "react";

import { ApiError, clusterPath, getJson, type Cluster, type HistoryEntry, type HistoryResponse } from "./api";
import { RunLink } from "./Details";
import { ErrorNotice } from "./ErrorNotice";
import { ago, when } from "./format";
import { useLast } from "./hooks";

const EVENT_PALETTE: Record<string, string> = {
  created: "blue",
  enabled: "green",
  disabled: "gray",
  resized: "purple",
  destroying: "red",
  destroyed: "red",
  instanceTerminated: "orange",
};

/** A cluster's deployment history: which pipeline run or which user of this page changed which group. */
export function ClusterHistory({ cluster, onClose }: { cluster: Cluster | undefined; onClose: () => void }) {
  const shown = useLast(cluster);
  return (
    <Drawer.Root
      open={cluster !== undefined}
      onOpenChange={(e) => {
        if (!e.open) onClose();
      }}
      size="lg"
      lazyMount
      unmountOnExit
    >
      <Portal>
        <Drawer.Backdrop />
        <Drawer.Positioner>
          <Drawer.Content data-testid="cluster-history">
            <Drawer.Header>
              <Drawer.Title>
                History of <Code>{shown?.name}</Code> in {shown?.account}
              </Drawer.Title>
            </Drawer.Header>
            <Drawer.Body>{shown !== undefined ? <Entries cluster={shown} /> : null}</Drawer.Body>
            <Drawer.CloseTrigger asChild>
              <CloseButton size="sm" aria-label="close the history" />
            </Drawer.CloseTrigger>
          </Drawer.Content>
        </Drawer.Positioner>
      </Portal>
    </Drawer.Root>
  );
}

function Entries({ cluster }: { cluster: Cluster }) {
  const [entries, setEntries] = useState<HistoryEntry[]>([]);
  const [next, setNext] = useState<number | null>(null);
  const [error, setError] = useState<Error | undefined>();
  const [loading, setLoading] = useState(true);
  const path = `${clusterPath(cluster.application, cluster.account, cluster.name)}/history`;

  const load = useCallback(
    (before: number | null) => {
      setLoading(true);
      getJson<HistoryResponse>(`${path}?limit=100${before === null ? "" : `&before=${before}`}`)
        .then((page) => {
          setEntries((old) => (before === null ? page.entries : [...old, ...page.entries]));
          setNext(page.nextBefore);
        })
        .catch((e: unknown) => setError(e instanceof Error ? e : new Error(String(e))))
        .finally(() => setLoading(false));
    },
    [path],
  );
  useEffect(() => load(null), [load]);

  if (error instanceof ApiError && error.status === 501) {
    return <Text color="fg.muted">The provider of account {cluster.account} keeps no history here.</Text>;
  }
  return (
    <Stack gap={3}>
      {error ? <ErrorNotice error={error} /> : null}
      {entries.length === 0 && loading ? <Spinner /> : null}
      {entries.length === 0 && !loading && !error ? <Text color="fg.muted">Nothing recorded yet.</Text> : null}
      {entries.length > 0 ? (
        <Table.Root size="sm">
          <Table.Header>
            <Table.Row>
              <Table.ColumnHeader>When</Table.ColumnHeader>
              <Table.ColumnHeader>Event</Table.ColumnHeader>
              <Table.ColumnHeader>Server group</Table.ColumnHeader>
              <Table.ColumnHeader>By</Table.ColumnHeader>
            </Table.Row>
          </Table.Header>
          <Table.Body>
            {entries.map((e) => (
              <Table.Row key={e.id} data-event={e.event}>
                <Table.Cell whiteSpace="nowrap" title={when(e.at)}>
                  {ago(e.at)}
                </Table.Cell>
                <Table.Cell>
                  <Badge colorPalette={EVENT_PALETTE[e.event] ?? "gray"}>{e.event}</Badge>
                  {e.message ? (
                    <Text fontSize="xs" color="fg.muted">
                      {e.message}
                    </Text>
                  ) : null}
                </Table.Cell>
                <Table.Cell>
                  <Code fontSize="xs">{e.serverGroup}</Code>
                  {e.instanceId ? <Text fontSize="xs">{e.instanceId}</Text> : null}
                </Table.Cell>
                <Table.Cell fontSize="sm">
                  {e.source === null ? (
                    <Text color="fg.muted">—</Text>
                  ) : e.source.kind === "ui" ? (
                    <Text>{e.source.user ?? "someone"} (Clusters page)</Text>
                  ) : (
                    <RunLink createdBy={{ ...e.source, mapIndex: -1 }} />
                  )}
                </Table.Cell>
              </Table.Row>
            ))}
          </Table.Body>
        </Table.Root>
      ) : null}
      {next !== null ? (
        <Button size="sm" variant="outline" alignSelf="start" onClick={() => load(next)} loading={loading}>
          Older
        </Button>
      ) : null}
    </Stack>
  );
}
