import { Alert, Link } from "@chakra-ui/react";

import { ApiError, type AccountError } from "./api";

/** An error of the API in words, with a way out where there is one (log in again after a 401). */
export function ErrorNotice({ error }: { error: Error }) {
  const status = error instanceof ApiError ? error.status : undefined;
  const login = new URL("api/v2/auth/login", document.baseURI);
  login.searchParams.set("next", window.location.href);
  return (
    <Alert.Root status="error" data-testid="error">
      <Alert.Indicator />
      <Alert.Content>
        <Alert.Title>
          {status === 401
            ? "Your Airflow session has ended."
            : status === 403
              ? "Not allowed."
              : status !== undefined
                ? `The Clusters API answered ${status}.`
                : "The Clusters API did not answer."}
        </Alert.Title>
        <Alert.Description>
          {status === 401 ? (
            <Link href={login.href} color="fg.info">
              Log in again
            </Link>
          ) : (
            <>
              {error.message}
              {error instanceof ApiError && error.hint ? ` (${error.hint})` : ""}
            </>
          )}
        </Alert.Description>
      </Alert.Content>
    </Alert.Root>
  );
}

/** Accounts that could not be read: the others are shown, these are named. */
export function AccountErrors({ errors }: { errors: AccountError[] }) {
  if (errors.length === 0) return null;
  return (
    <Alert.Root status="warning" data-testid="account-errors">
      <Alert.Indicator />
      <Alert.Content>
        <Alert.Title>Some accounts could not be read; their clusters are missing below.</Alert.Title>
        <Alert.Description>
          {errors.map((e) => `${e.account}: ${e.detail} (${e.status})`).join("; ")}
        </Alert.Description>
      </Alert.Content>
    </Alert.Root>
  );
}
