//! Users as the original database knows them: `auth.users` and `public.profiles`, reduced to their keys.

use tokio_postgres::GenericClient;
use tokio_postgres::types::Type;
use uuid::Uuid;

/// Makes sure the user and its profile exist (local stack and tests; Supabase creates them in production).
pub async fn ensure<C: GenericClient>(
    client: &C,
    user_id: Uuid,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_typed(
            "WITH u AS (INSERT INTO auth.users (id) VALUES ($1) ON CONFLICT (id) DO NOTHING)
             INSERT INTO public.profiles (id) VALUES ($1) ON CONFLICT (id) DO NOTHING",
            &[(&user_id, Type::UUID)],
        )
        .await?;
    Ok(())
}

/// Whether the user has a profile.
pub async fn exists<C: GenericClient>(
    client: &C,
    user_id: Uuid,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_typed_one(
            "SELECT EXISTS (SELECT 1 FROM public.profiles WHERE id = $1)",
            &[(&user_id, Type::UUID)],
        )
        .await?;
    Ok(row.get(0))
}
