//! Creating and editing documents: the bodies are the Rust API's own types
//! (`NewCustomer`, `NewVisit`, `NewQuote` and the edit enums) as JSON. An `add_*` edit whose
//! item id is left empty gets a fresh one here; a list of edits is written as one change.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::reply::{ApiError, ApiResult, blocking, parse_id};
use crate::{
    Customer, CustomerEdit, CustomerId, NewCustomer, NewQuote, NewVisit, Quote, QuoteEdit, QuoteId,
    Visit, VisitEdit, VisitId,
};
use fieldsync_core::model::new_item_id;

#[derive(Serialize)]
pub(super) struct Created {
    id: crate::DocId,
}

/// A request body, or a clear 400 saying what is wrong with it.
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    b.map(|Json(t)| t)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid: {}", e.body_text())))
}

fn fill(id: &mut String) {
    if id.trim().is_empty() {
        *id = new_item_id();
    }
}

fn fill_customer(edits: &mut [CustomerEdit]) {
    for e in edits {
        match e {
            CustomerEdit::AddAddress(id, _)
            | CustomerEdit::AddContact(id, _)
            | CustomerEdit::AddEquipment(id, _)
            | CustomerEdit::AddNote(id, _) => fill(id),
            _ => {}
        }
    }
}

fn fill_visit(edits: &mut [VisitEdit]) {
    for e in edits {
        match e {
            VisitEdit::AddNeed(id, _)
            | VisitEdit::AddTask(id, _)
            | VisitEdit::AddComment(id, _) => {
                fill(id);
            }
            _ => {}
        }
    }
}

fn fill_quote(edits: &mut [QuoteEdit]) {
    for e in edits {
        match e {
            QuoteEdit::AddLine(id, _) | QuoteEdit::AddNote(id, _) => fill(id),
            _ => {}
        }
    }
}

/// `POST /api/customers`.
pub(super) async fn new_customer(
    State(app): State<Arc<AppState>>,
    b: Result<Json<NewCustomer>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let new = body(b)?;
    blocking(move || {
        let id = app.client.customers().create(new)?;
        Ok((StatusCode::CREATED, Json(Created { id: id.into() })))
    })
    .await
}

/// `POST /api/customers/ID/edits`.
pub(super) async fn edit_customer(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    b: Result<Json<Vec<CustomerEdit>>, JsonRejection>,
) -> ApiResult<Json<Customer>> {
    let id: CustomerId = parse_id(&id)?;
    let mut edits = body(b)?;
    fill_customer(&mut edits);
    blocking(move || {
        app.client.customers().edit_all(id, &edits)?;
        Ok(Json(app.client.customers().get(id)?))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct NewVisitBody {
    visit: NewVisit,
    #[serde(default)]
    edits: Vec<VisitEdit>,
}

/// `POST /api/visits`: the visit and its details (contacts met, needs, tasks, …) as one
/// change.
pub(super) async fn new_visit(
    State(app): State<Arc<AppState>>,
    b: Result<Json<NewVisitBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let NewVisitBody { visit, mut edits } = body(b)?;
    fill_visit(&mut edits);
    blocking(move || {
        let id = app.client.visits().create_with(visit, &edits)?;
        Ok((StatusCode::CREATED, Json(Created { id: id.into() })))
    })
    .await
}

/// `POST /api/visits/ID/edits`.
pub(super) async fn edit_visit(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    b: Result<Json<Vec<VisitEdit>>, JsonRejection>,
) -> ApiResult<Json<Visit>> {
    let id: VisitId = parse_id(&id)?;
    let mut edits = body(b)?;
    fill_visit(&mut edits);
    blocking(move || {
        app.client.visits().edit_all(id, &edits)?;
        Ok(Json(app.client.visits().get(id)?))
    })
    .await
}

#[derive(Deserialize)]
pub(super) struct NewQuoteBody {
    quote: NewQuote,
    #[serde(default)]
    edits: Vec<QuoteEdit>,
}

/// `POST /api/quotes`: the draft and its lines as one change.
pub(super) async fn new_quote(
    State(app): State<Arc<AppState>>,
    b: Result<Json<NewQuoteBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let NewQuoteBody { quote, mut edits } = body(b)?;
    fill_quote(&mut edits);
    blocking(move || {
        let id = app.client.quotes().create_with(quote, &edits)?;
        Ok((StatusCode::CREATED, Json(Created { id: id.into() })))
    })
    .await
}

/// `POST /api/quotes/ID/edits`: line edits and the status lattice (submit, approve, …).
pub(super) async fn edit_quote(
    State(app): State<Arc<AppState>>,
    Path(id): Path<String>,
    b: Result<Json<Vec<QuoteEdit>>, JsonRejection>,
) -> ApiResult<Json<Quote>> {
    let id: QuoteId = parse_id(&id)?;
    let mut edits = body(b)?;
    fill_quote(&mut edits);
    blocking(move || {
        app.client.quotes().edit_all(id, &edits)?;
        Ok(Json(app.client.quotes().get(id)?))
    })
    .await
}
