//! Dev tooling for the generation pipeline: the local stack, the fal emulator, migrations, tokens, demo, tests,
//! release packaging.

mod bench;
mod cargo;
mod clock;
mod emulator;
mod net;
mod package;
mod paths;
mod procfs;
mod stack;
mod test_runner;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Local stack and dev tooling for the generation pipeline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start or stop the local stack of real parts.
    Stack {
        #[command(subcommand)]
        action: StackAction,
    },
    /// Bring the stack up, run every test of the workspace against it, bring it down.
    Test {
        /// Extra arguments passed to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Bring the stack up and run the end-to-end demo.
    Demo,
    /// Apply the migrations to DATABASE_URL.
    Migrate,
    /// Print a user access token shaped like Supabase Auth's, valid on the local stack, and make sure the user
    /// exists.
    Token {
        user_id: uuid::Uuid,
        /// ES256 and RS256 sign with the stack's keys (published in its JWKS), HS256 with SUPABASE_JWT_SECRET.
        #[arg(long, value_enum, ignore_case = true, default_value = "ES256")]
        alg: stack::TokenAlg,
    },
    /// One pass of the lost-webhook reconciler against the local stack.
    Reconcile {
        /// Queued jobs younger than this many seconds are left to their webhook.
        #[arg(long, default_value_t = 900)]
        older_than: u64,
    },
    /// Measure the performance figures on the local stack (release builds): target/bench/report.json and a table.
    Bench {
        /// Debug builds and tiny sizes; checks only that every figure is produced (`cargo xtask test` runs it).
        #[arg(long)]
        smoke: bool,
        /// Internal: the plan of the measuring process that `cargo xtask bench` starts.
        #[arg(long, hide = true)]
        plan: Option<std::path::PathBuf>,
        #[command(flatten)]
        way: bench::way::WayArgs,
    },
    /// Build the functions' release zips for Lambda (arm64) with cargo-lambda, and print their sizes.
    Package {
        /// Only these functions (default: all of them).
        functions: Vec<String>,
    },
    /// Run the fal emulator in the foreground (the stack starts it in the background).
    FalEmulator {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
        /// A public JWK set to serve as Supabase Auth's at `/auth/v1/.well-known/jwks.json` (read at each request).
        #[arg(long)]
        supabase_jwks: Option<std::path::PathBuf>,
    },
}

#[derive(Subcommand)]
enum StackAction {
    Up {
        /// Put PgBouncer (transaction mode) between the functions and Postgres; tests stay direct.
        #[arg(long)]
        pooler: bool,
    },
    Down,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new()?;
    match cli.command {
        Command::Stack {
            action: StackAction::Up { pooler },
        } => rt.block_on(stack::up(pooler)).map(|_| ()),
        Command::Stack {
            action: StackAction::Down,
        } => stack::down(),
        Command::Test { args } => {
            let code = rt.block_on(test_runner::test(args))?;
            std::process::exit(code);
        }
        Command::Demo => rt.block_on(stack::demo()),
        Command::Migrate => rt.block_on(stack::migrate_from_env()),
        Command::Token { user_id, alg } => rt.block_on(stack::token(user_id, alg)),
        Command::Reconcile { older_than } => rt.block_on(stack::reconcile(older_than)),
        Command::Bench { smoke, plan, way } => rt.block_on(async {
            match way.run().await {
                Some(done) => done,
                None => bench::run(smoke, plan).await,
            }
        }),
        Command::Package { functions } => rt.block_on(package::run(functions)),
        Command::FalEmulator {
            listen,
            supabase_jwks,
        } => rt.block_on(emulator::serve(listen, supabase_jwks)),
    }
}
