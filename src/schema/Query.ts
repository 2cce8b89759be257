/**
 * Queries: a request to some services, each answering with a response or an
 * error, gathered under one request id.
 */
import * as Data from "effect/Data"
import type * as Duration from "effect/Duration"
import * as Pipeable from "effect/Pipeable"
import type { Clause } from "./Resolver.ts"
import type { Service } from "./Service.ts"

const utf8 = new TextDecoder()

/**
 * A target's response. Its fields are set one by one, not copied from the
 * argument as a data class does: one is made a round trip, on its hot path.
 */
export class QueryResponse extends Pipeable.Class {
  readonly _tag = "QueryResponse"
  readonly service: Service
  readonly data: Uint8Array
  constructor(props: { readonly service: Service; readonly data: Uint8Array }) {
    super()
    this.service = props.service
    this.data = props.data
  }
  get text(): string {
    return utf8.decode(this.data)
  }
}
/** A target answered with an error (its responder failed or it has none), or could not be reached. */
export class QueryError extends Data.TaggedClass("QueryError")<{
  readonly service: Service
  readonly message: string
}> {}
/** Every target has answered. The last event. */
export class QueryDone extends Data.TaggedClass("QueryDone")<{}> {}
/** The timeout came first; `missing` did not answer. The last event. */
export class QueryTimeout extends Data.TaggedClass("QueryTimeout")<{ readonly missing: ReadonlyArray<Service> }> {}

export type QueryEvent = QueryResponse | QueryError | QueryDone | QueryTimeout

/** Everything a query gathered. */
export interface QueryResult {
  /** Responses by service id. */
  readonly responses: ReadonlyMap<string, QueryResponse>
  /** Errors by service id. */
  readonly errors: ReadonlyMap<string, QueryError>
  /** Targets that had not answered when the timeout came. */
  readonly missing: ReadonlyArray<Service>
  /** Whether every target answered (with a response or an error). */
  readonly complete: boolean
}

export interface QueryOptions<T> {
  /** Whom to ask: services, resolve terms, or `{ where: clauses }`. */
  readonly target: T | { readonly where: ReadonlyArray<Clause> }
  readonly op: string
  readonly data: string | Uint8Array
  /** How long to wait for every answer. Default 5 seconds. */
  readonly timeout?: Duration.Input
}
