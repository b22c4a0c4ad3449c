/**
 * The Clusters page, as Airflow 3.3 loads a plugin's React app (`react_apps`).
 *
 * Airflow's UI imports this bundle (UMD, global name `AirflowPlugin`) and renders its default
 * export inside its own React tree: React, the JSX runtime, React Router and Chakra UI are the
 * host's (globals `React`, `ReactJSXRuntime`, `ReactRouterDOM`, `ChakraUI`; see
 * vite.config.ts), so the page shares its theme, light and dark mode, and router.
 */
import { Component, type ErrorInfo, type ReactNode } from "react";
import { Alert, Box } from "@chakra-ui/react";

import { applicationPath, prefetch } from "./api";
import { ClustersPage, LAST_APPLICATION } from "./ClustersPage";
import { installStyles } from "./styles";

// Airflow's UI loads this bundle when the page is opened: start reading at once, while React renders.
// (The gennaker:* performance marks are read by tests/benchmarks/clusters_page.py.)
performance.mark("gennaker:bundle-loaded");
installStyles();
prefetch("applications");
const asked = new URLSearchParams(window.location.search).get("application") ?? lastApplication();
if (asked) prefetch(`${applicationPath(asked)}/clusters`);

/** The application the page showed last in this browser (it opens that one when the URL names none). */
function lastApplication(): string | null {
  try {
    return window.localStorage.getItem(LAST_APPLICATION);
  } catch {
    return null;
  }
}

/** Keeps a failure of this page inside it, instead of Airflow's whole UI showing an error. */
class Contained extends Component<{ children: ReactNode }, { error: Error | undefined }> {
  state = { error: undefined as Error | undefined };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  componentDidCatch(error: Error, info: ErrorInfo) {
    console.error("gennaker Clusters page failed", error, info.componentStack);
  }

  render() {
    if (this.state.error === undefined) return this.props.children;
    return (
      <Box p={4}>
        <Alert.Root status="error">
          <Alert.Indicator />
          <Alert.Content>
            <Alert.Title>The Clusters page failed.</Alert.Title>
            <Alert.Description>{this.state.error.message}</Alert.Description>
          </Alert.Content>
        </Alert.Root>
      </Box>
    );
  }
}

/** Airflow passes dagId, runId, taskId and mapIndex (all undefined on a nav page); the page needs none. */
export default function GennakerClusters() {
  return (
    <Contained>
      <ClustersPage />
    </Contained>
  );
}
