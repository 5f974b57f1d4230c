//! `imgfleet search`: search a collection by text, by an image file (`--image`) or like a stored
//! image (`--like`), and print the hits.

use std::path::PathBuf;

use anyhow::{Context, bail};
use base64::Engine;
use clap::{ArgGroup, Args};
use reqwest::Method;
use serde_json::json;

use super::format::hits_text;
use super::http::{Api, ClientArgs};

/// Search a collection by text, by an image file, or by an image already stored.
#[derive(Args, Debug, Clone)]
#[command(group(ArgGroup::new("query").required(true).args(["text", "image", "like"])))]
pub struct SearchArgs {
    /// What to look for, in words ("a dog on a beach").
    pub text: Option<String>,
    /// Find images that look like this file (sent to the server).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Find images like the stored image with this id.
    #[arg(long, value_name = "ID")]
    pub like: Option<String>,
    /// Number of hits.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub limit: u32,
    /// Collection to search (default: the server's selected collection).
    #[arg(long)]
    pub collection: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

pub async fn run_search(args: SearchArgs) -> anyhow::Result<i32> {
    let mut body = if let Some(path) = &args.image {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        json!({"image_base64": base64::engine::general_purpose::STANDARD.encode(bytes)})
    } else if let Some(id) = &args.like {
        json!({"like_id": id})
    } else if let Some(text) = &args.text {
        json!({"text": text})
    } else {
        bail!("say what to search for: TEXT, --image FILE or --like ID");
    };
    body["limit"] = json!(args.limit);
    if let Some(collection) = &args.collection {
        body["collection"] = json!(collection);
    }
    let api = Api::new(&args.client)?;
    let raw = api.request(Method::POST, &["search"], Some(&body)).await?;
    if args.client.json {
        println!("{raw}");
        return Ok(0);
    }
    let Some(hits) = raw.as_array() else { bail!("the server's search answer is not a list of hits: {raw}") };
    print!("{}", hits_text(hits));
    Ok(0)
}
